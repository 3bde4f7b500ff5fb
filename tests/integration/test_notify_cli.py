"""The notification commands through the ``tier-ml`` CLI: dispatch, outbox list/retry, campaigns,
and the worker delivering after its sweep. Real SQLite store, real HTTP receiver, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from tests.integration.notify_support import (
    DAY,
    POLICY,
    SECRET,
    SECRET_ENV,
    T0,
    WebhookReceiver,
    isolate_mlflow,
    placed,
)
from tier_ml.cli import app
from tier_ml.store import service
from tier_ml.store.service import iso_instant, open_store

runner = CliRunner()
NOW = iso_instant(T0 + 5 * DAY)


def said(result: Result) -> str:
    return " ".join(result.output.split())


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv("TIER_ML_CHANNELS", raising=False)
    monkeypatch.delenv("TIER_ML_POLICY", raising=False)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    engine = open_store(url)
    for customer in ("ann", "bob"):
        for step, amount in enumerate((300, 800)):
            at = T0 + step * DAY
            service.apply_events(
                engine, [placed(customer, f"{customer}{step}", amount, at)], at, POLICY
            )
    engine.dispose()
    return url


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def channels_file(tmp_path: Path, url: str, **delivery) -> Path:
    path = tmp_path / "channels.yaml"
    document = {
        "delivery": {"max_attempts": 2, "backoff_seconds": 1, **delivery},
        "webhooks": [{"name": "crm", "url": url, "secret_env": SECRET_ENV}],
        "campaigns": {"gold_retention": {"threshold": 0.5, "control_share": 0.2, "seed": 1}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_dispatch_then_list(store, receiver, tmp_path) -> None:
    channels = channels_file(tmp_path, receiver.url)
    result = run("dispatch", "--now", NOW, "--channels", str(channels), "--db", store)
    assert result.exit_code == 0, result.output
    assert "4 attempts: 4 delivered, 0 to retry, 0 dead-lettered" in said(result)
    assert len(receiver.effects) == 4
    listed = run("outbox", "list", "--db", store)
    assert listed.exit_code == 0 and "delivered 4" in said(listed)
    out = tmp_path / "outbox.csv"
    assert (
        run("outbox", "list", "--customer", "ann", "--out", str(out), "--db", store).exit_code == 0
    )
    frame = pd.read_csv(out)
    assert frame["kind"].tolist() == ["welcome", "tier_upgraded"]
    assert set(frame["channels_delivered"]) == {"crm"}


def test_dead_letters_are_listed_and_retried(store, tmp_path) -> None:
    receiver = WebhookReceiver(fail_first=10**6).start()
    try:
        channels = str(channels_file(tmp_path, receiver.url, max_attempts=1))
        result = run("dispatch", "--now", NOW, "--channels", channels, "--db", store)
        assert result.exit_code == 0 and "4 dead-lettered" in said(result)
        assert "tier-ml outbox list --status dead" in said(result)
        listed = run("outbox", "list", "--status", "dead", "--format", "jsonl", "--db", store)
        dead = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
        assert len(dead) == 4 and dead[0]["last_error"] == "crm: HTTP 503"
        receiver.fail_first = 0
        retried = run("outbox", "retry", str(dead[0]["id"]), "--now", NOW, "--db", store)
        assert retried.exit_code == 0 and "retrying 1 messages" in said(retried)
        assert run("outbox", "retry", "--all-dead", "--db", store).exit_code == 0  # due at once
        again = run("dispatch", "--now", NOW, "--channels", channels, "--db", store)
        assert "4 delivered" in said(again)
    finally:
        receiver.stop()


def test_worker_delivers_after_its_sweep(store, receiver, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TIER_ML_CHANNELS", str(channels_file(tmp_path, receiver.url)))
    result = run("worker", "--iterations", "1", "--interval", "0", "--db", store)
    assert result.exit_code == 0, result.output
    assert "4 delivered" in said(result) and len(receiver.effects) == 4


def test_channels_beside_the_policy_are_found(store, receiver, tmp_path, monkeypatch) -> None:
    channels_file(tmp_path, receiver.url)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY.model_dump(mode="json")))
    monkeypatch.setenv("TIER_ML_POLICY", str(policy))
    result = run("dispatch", "--now", NOW, "--db", store)
    assert result.exit_code == 0 and "4 delivered" in said(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dispatch"], "no channels file"),
        (["outbox", "retry"], "name the outbox ids to retry"),
        (["outbox", "retry", "12345"], "no outbox messages with ids [12345]"),
        (["outbox", "list", "--status", "lost"], "status must be one of"),
        (["campaigns", "show", "99"], "campaign run 99 selected nobody"),
    ],
)
def test_user_errors_are_one_line(store, args, message) -> None:
    result = run(*args, "--db", store)
    assert result.exit_code == 2, result.output
    assert message in said(result) and "Traceback" not in result.output


def test_channel_file_errors_are_one_line(store, tmp_path, monkeypatch) -> None:
    channels = channels_file(tmp_path, "http://127.0.0.1:9/hook")
    monkeypatch.delenv(SECRET_ENV)
    missing = run("dispatch", "--channels", str(channels), "--db", store)
    assert missing.exit_code == 2
    assert f"environment variable {SECRET_ENV} (webhooks.crm.secret_env) is not set" in said(
        missing
    )
    channels.write_text("webhooks: [{name: crm, url: ftp://x, secret: hunter2}]")
    inline = run("dispatch", "--channels", str(channels), "--db", store)
    assert inline.exit_code == 2 and "secrets are read from the environment only" in said(inline)
    channels.write_text("webhooks: [{name: crm, url: ftp://x, secret_env: X}]")
    bad = run("dispatch", "--channels", str(channels), "--db", store)
    assert bad.exit_code == 2 and "webhooks.0.url" in said(bad)


def test_campaign_run_from_a_scores_file(store, receiver, tmp_path) -> None:
    channels = str(channels_file(tmp_path, receiver.url))
    scores = tmp_path / "scores.csv"
    pd.DataFrame(
        {
            "customer_id": [f"g{i}" for i in range(20)],
            "tier": "Gold",
            "churn_probability": [i / 20 for i in range(20)],
            "churn_model_version": "5",
        }
    ).to_csv(scores, index=False)
    args = ["campaigns", "run", "--now", NOW, "--scores", str(scores), "--channels", channels]
    result = run(*args, "--db", store, "--out", str(tmp_path / "selection.csv"))
    assert result.exit_code == 0, result.output
    assert "run 1 of campaign gold_retention: 20 scored; treated 8, control 2" in said(result)
    selection = pd.read_csv(tmp_path / "selection.csv")
    assert selection["status"].value_counts()["below_threshold"] == 10
    listed = run("campaigns", "list", "--db", store)
    assert listed.exit_code == 0 and "gold_retention" in listed.output
    shown = run("campaigns", "show", "1", "--db", store)
    assert shown.exit_code == 0 and len(pd.read_csv(pd.io.common.StringIO(shown.stdout))) == 10
    again = run(*args, "--db", store, "--threshold", "0.3")
    assert "cooling down 10" in said(again) and "treated 3, control 1" in said(again)
    dispatched = run("dispatch", "--now", NOW, "--channels", channels, "--db", store)
    assert dispatched.exit_code == 0
    offers = [r for r in receiver.requests if r.kind == "retention_offer"]
    assert len(offers) == 11 and all(r.signature_ok for r in offers)


def test_campaign_errors(store, tmp_path) -> None:
    bad = tmp_path / "scores.csv"
    bad.write_text("customer_id,tier,churn_probability,model_version\na,Gold,1.5,1\n")
    result = run("campaigns", "run", "--scores", str(bad), "--db", store)
    assert result.exit_code == 2 and "churn_probability must be a number in [0, 1]" in said(result)
    unknown = run("campaigns", "run", "--campaign", "spring", "--scores", str(bad), "--db", store)
    assert unknown.exit_code == 2 and "no campaign 'spring'" in said(unknown)


@pytest.mark.slow  # importing MLflow and opening an empty registry
def test_campaign_without_a_registered_model_is_one_line(store, tmp_path, monkeypatch) -> None:
    isolate_mlflow(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    no_model = run("campaigns", "run", "--now", NOW, "--db", store)
    assert no_model.exit_code == 2 and "Traceback" not in no_model.output, no_model.output
    assert "--scores" in said(no_model) or "champion" in said(no_model)


def test_dispatch_with_no_channel_configured_refuses_and_keeps_the_messages(
    store, tmp_path
) -> None:
    """Delivering to no channel would mark every message delivered: refused, none is lost."""
    before = run("outbox", "list", "--db", store)
    assert before.exit_code == 0 and "pending 4" in said(before)
    for text in ("", "program_name: Rewards\n"):
        channels = tmp_path / "channels.yaml"
        channels.write_text(text)
        for command in (["dispatch", "--now", NOW], ["worker", "--iterations", "1"]):
            result = run(*command, "--channels", str(channels), "--db", store)
            assert result.exit_code == 2, (command, result.output)
            assert "configures no channel" in said(result) and "Traceback" not in result.output
    after = run("outbox", "list", "--db", store)
    assert "pending 4, delivered 0" in said(after)
