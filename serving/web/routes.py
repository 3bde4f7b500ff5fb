"""The CRM dashboard: server-rendered pages inside the service (Jinja2, inline SVG charts).

- ``/login``, ``/logout``: log in with an API key; a signed session cookie follows
  (:mod:`serving.web.session`).
- ``/dashboard``: the tier pyramid and the upgrades/downgrades per week.
- ``/dashboard/at-risk``: Gold customers by churn probability with their top reasons,
  filtered by minimum probability and region; ``/dashboard/at-risk.csv`` downloads it.
- ``/dashboard/customers/{id}``: tier, spend, pending spend and when it matures,
  progress to the next tier, predictions, the explained ledger, tier history and audit
  trail; admins get the override form, which posts through the same code as
  ``PUT /v1/customers/{id}/override`` (audited with the key's name as actor).

The pages read through the same use cases as the API (``tier_ml.store.views``,
``tier_ml.store.explain``, ``serving.scoring``) and need the same scopes. They are
left out of the OpenAPI schema. No data without a login: pages redirect to
``/login``; a key sent in a header that is not valid gets 401.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import pandas as pd
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from serving.auth import Principal
from serving.customer_paths import CUSTOMER
from serving.errors import Problem
from serving.intervals import interval_fields, model_kinds
from serving.models import prediction_fields, reasons_list
from serving.routers import customers as customer_api
from serving.routers.segments import csv_response, resolve_tier
from serving.schemas import AtRiskOut, OverrideIn
from serving.scoring import batch_features, customer_features, score
from serving.web import charts
from serving.web.movements import weekly_movements
from serving.web.session import (
    CSRF_FIELD,
    SessionCodec,
    Visitor,
    csrf_ok,
    identify,
    login,
    new_session,
    session_max_age,
    session_secret,
)
from serving.web.throttle import LoginThrottle, throttle_from_env
from tier_ml.store.explain import customer_ledger
from tier_ml.store.service import StoreError, active_policy, iso_instant
from tier_ml.store.views import customer_view, tier_counts

log = logging.getLogger("serving.web")
HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
AT_RISK_PAGE = 50
#: Pages load nothing from elsewhere, run no script and cannot be framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
DEFAULT_MIN_PROBABILITY = 0.5
MOVEMENT_WEEKS = 26

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """Raised by a page for a visitor without a session: answered by a redirect to /login."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageError(Exception):
    """A page that cannot be shown (403, 404, 503...), answered as an HTML page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


@dataclass(frozen=True)
class Dashboard:
    """What the pages share, built once per app by :func:`install`."""

    templates: Jinja2Templates
    codec: SessionCodec
    throttle: LoginThrottle


def install(app: FastAPI) -> None:
    """Add the dashboard pages, their static files and their error pages to ``app``."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.filters["money"] = _money
    templates.env.filters["pct"] = _pct
    templates.env.filters["when"] = _when
    templates.env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    templates.env.globals["probability_bar"] = charts.probability_bar
    templates.env.globals["tier_colour"] = charts.tier_colour
    templates.env.globals["CSRF_FIELD"] = CSRF_FIELD
    codec = SessionCodec(session_secret(), session_max_age())
    app.state.dashboard = Dashboard(templates, codec, throttle_from_env())
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.add_exception_handler(LoginRequired, _on_login_required)
    app.add_exception_handler(PageError, _on_page_error)


# --- formatting --------------------------------------------------------------------------------


def _money(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{float(value):,.2f}"


def _pct(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{100 * float(value):.{digits}f}%"


def _when(value: Any) -> str:
    """An ISO instant as ``2025-07-01 14:05 UTC`` (dates alone without the time)."""
    if not value:
        return "–"
    text = str(value).replace("T", " ").removesuffix("Z")
    text = text.split(".")[0]
    if text.endswith(" 00:00:00"):
        return text[:10]
    return text[:16] + " UTC"


# --- plumbing ----------------------------------------------------------------------------------


def _services(request: Request) -> Any:
    return request.app.state.services


def _dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard


def _visitor(request: Request) -> Visitor:
    return identify(request, _services(request), _dashboard(request).codec)


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _require(request: Request, visitor: Visitor, scope: str) -> Principal:
    """The visitor's principal when they hold ``scope``: else a redirect to /login (no session),
    401 (a bad key in a header) or 403 (logged in without the scope)."""
    if visitor.principal is None:
        if visitor.by_header:
            raise PageError(
                401, "Not authenticated", "the API key is not valid (unknown or revoked)"
            )
        raise LoginRequired(_here(request) if request.method == "GET" else "/dashboard")
    if scope not in visitor.principal.scopes:
        raise PageError(
            403,
            "Not allowed",
            f"the key {visitor.principal.name!r} lacks the scope {scope!r} "
            f"(it has: {', '.join(sorted(visitor.principal.scopes)) or 'none'})",
        )
    return visitor.principal


def _check_csrf(visitor: Visitor, token: str) -> None:
    if visitor.by_header:  # the key itself was sent: no ambient cookie to abuse
        return
    if not csrf_ok(visitor.session, token):
        raise PageError(
            403,
            "Form expired",
            "the form's security token does not match your session (it may have expired, "
            "or the form came from another site): reload the page and try again",
        )


def _render(
    request: Request, visitor: Visitor, template: str, context: dict[str, Any], status: int = 200
) -> Response:
    """A page, with a session cookie when the visitor has none yet (forms need its token)."""
    dashboard = _dashboard(request)
    session = visitor.session
    fresh = session is None or (visitor.principal is None and session.logged_in)
    if fresh:
        session = new_session()
    services = _services(request)
    page = {
        "request": request,
        "visitor": visitor,
        "csrf_token": session.csrf,
        "as_of": iso_instant(services.now_us()),
        "auth_disabled": services.keys.disabled,
        **context,
    }
    response = dashboard.templates.TemplateResponse(request, template, page, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(SECURITY_HEADERS)
    if fresh and not visitor.by_header:
        dashboard.codec.write(request, response, session)
    return response


async def _on_login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?{urlencode({'next': exc.next_url})}", status_code=303)


async def _on_page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    visitor = _visitor(request)
    context = {"title": exc.title, "message": exc.message, "status": exc.status}
    return _render(request, visitor, "error.html", context, status=exc.status)


def _safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme): no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/dashboard"
    return value


# --- login -------------------------------------------------------------------------------------


@router.get("/")
def root() -> Response:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    visitor = _visitor(request)
    if visitor.principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, visitor, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
def login_submit(
    request: Request,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2_000)] = "/dashboard",
) -> Response:
    visitor = _visitor(request)
    target = _safe_next(next)
    if not csrf_ok(visitor.session, csrf_token):
        context = {"next": target, "error": "The login form expired: please try again."}
        return _render(request, Visitor(None, None), "login.html", context, status=400)
    throttle = _dashboard(request).throttle
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait is not None:
        error = f"Too many wrong API keys from your address: try again in {wait} s."
        page = _render(request, visitor, "login.html", {"next": target, "error": error}, status=429)
        page.headers["Retry-After"] = str(wait)
        return page
    done = login(_services(request), api_key)
    if done is None:
        message = "Enter your API key." if not api_key.strip() else "That API key is not valid."
        if api_key.strip():
            throttle.failed(client)
            log.warning("dashboard login with a wrong key from %s", client)
        context = {"next": target, "error": message}
        return _render(request, visitor, "login.html", context, status=401)
    throttle.succeeded(client)
    principal, session = done
    log.info("dashboard login by key %r", principal.name)
    response = RedirectResponse(target, status_code=303)
    _dashboard(request).codec.write(request, response, session)
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str, Form(max_length=256)] = "") -> Response:
    visitor = _visitor(request)
    _check_csrf(visitor, csrf_token)
    response = RedirectResponse("/login", status_code=303)
    _dashboard(request).codec.write(request, response, new_session())
    return response


# --- overview ----------------------------------------------------------------------------------


@router.get("/dashboard")
def overview(request: Request) -> Response:
    visitor = _visitor(request)
    _require(request, visitor, "tiers:read")
    services = _services(request)
    now_us = services.now_us()
    active = active_policy(services.engine)
    policy = active.policy if active is not None else services.policy()
    counts = tier_counts(services.engine)
    levels = [(name, counts.get(name, 0)) for name in policy.tier_names]
    weeks = weekly_movements(services.engine, policy, now_us, MOVEMENT_WEEKS)
    context = {
        "page": "overview",
        "levels": list(reversed(levels)),
        "customers": sum(counts.values()),
        "pyramid": charts.pyramid(levels),
        "weeks": weeks,
        "movements": charts.movements(weeks),
        "upgrades": sum(w.upgrades for w in weeks),
        "downgrades": sum(w.downgrades for w in weeks),
        "policy_version": None if active is None else active.version,
        "models": _model_status(services),
        "at_risk": _at_risk_summary(services, visitor, now_us),
    }
    return _render(request, visitor, "overview.html", context)


def _model_status(services: Any) -> dict[str, Any]:
    models = services.models.current
    return {
        "ready": models.ready,
        "versions": models.versions(),
        "reason": None if models.ready else models.unavailable_reason(),
    }


def _at_risk_summary(services: Any, visitor: Visitor, now_us: int) -> dict[str, Any] | None:
    """How many Gold customers are at risk (p >= 0.5), when the visitor may see predictions."""
    if not visitor.can("predictions:read") or not services.models.current.ready:
        return None
    try:
        at_risk = _at_risk_list(services, now_us)
    except Problem as exc:
        return {"error": exc.detail}
    rows = at_risk.rows
    return {
        "tier": at_risk.tier,
        "total": len(rows),
        "at_risk": int((rows["churn_probability"] >= DEFAULT_MIN_PROBABILITY).sum()),
        "min_probability": DEFAULT_MIN_PROBABILITY,
    }


# --- at-risk list ------------------------------------------------------------------------------


def _at_risk_list(services: Any, now_us: int) -> Any:
    tier = resolve_tier(services, services.settings.at_risk_tier)
    cache = services.caches["at_risk"]
    return cache.get(services.engine, services.models.current, services.policy(), tier, now_us)


@dataclass(frozen=True)
class AtRiskFilters:
    min_probability: float
    region: str
    start: int
    error: str | None

    def query(self, **changes: Any) -> str:
        values = {"min_probability": f"{self.min_probability:g}", "region": self.region}
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _filters(min_probability: str | None, region: str | None, start: str | None) -> AtRiskFilters:
    error = None
    probability = DEFAULT_MIN_PROBABILITY
    if min_probability not in (None, ""):
        try:
            probability = float(min_probability)
            if not 0.0 <= probability <= 1.0:
                raise ValueError
        except ValueError:
            error = f"minimum probability must be a number from 0 to 1, not {min_probability!r}"
            probability = DEFAULT_MIN_PROBABILITY
    offset = int(start) if start and start.isdigit() and len(start) < 10 else 0
    return AtRiskFilters(probability, (region or "").strip(), offset, error)


def _filtered(rows: pd.DataFrame, filters: AtRiskFilters) -> pd.DataFrame:
    keep = rows["churn_probability"] >= filters.min_probability
    if filters.region:
        keep &= rows["region"] == filters.region
    return rows[keep]


@router.get("/dashboard/at-risk")
def at_risk_page(
    request: Request,
    min_probability: str | None = None,
    region: str | None = None,
    start: str | None = None,
) -> Response:
    visitor = _visitor(request)
    _require(request, visitor, "predictions:read")
    services = _services(request)
    filters = _filters(min_probability, region, start)
    context: dict[str, Any] = {
        "page": "at-risk",
        "filters": filters,
        "models": _model_status(services),
        "tier": services.settings.at_risk_tier,
        "rows": [],
        "regions": [],
        "note": None,
    }
    if not services.models.current.ready:
        context["note"] = services.models.current.unavailable_reason()
        return _render(request, visitor, "at_risk.html", context)
    now_us = services.now_us()
    try:
        at_risk = _at_risk_list(services, now_us)
    except Problem as exc:
        context["note"] = exc.detail
        return _render(request, visitor, "at_risk.html", context, status=exc.status)
    rows = _filtered(at_risk.rows, filters)
    page = rows.iloc[filters.start : filters.start + AT_RISK_PAGE]
    reasons = _top_reasons(services, page["customer_id"].tolist(), now_us)
    context.update(
        tier=at_risk.tier,
        total=len(rows),
        tier_total=len(at_risk.rows),
        regions=sorted(at_risk.rows["region"].dropna().astype(str).unique()),
        rows=[{**r, "reasons": reasons.get(r["customer_id"], [])} for r in _records(page)],
        previous=filters.query(start=max(0, filters.start - AT_RISK_PAGE))
        if filters.start > 0
        else None,
        following=filters.query(start=filters.start + AT_RISK_PAGE)
        if filters.start + AT_RISK_PAGE < len(rows)
        else None,
        csv_query=filters.query(),
        model_versions=at_risk.model_versions,
        model_kinds=model_kinds(services.models.current),
    )
    return _render(request, visitor, "at_risk.html", context)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _top_reasons(services: Any, ids: list[str], now_us: int) -> dict[str, list[dict[str, Any]]]:
    """The churn model's top reasons for the customers on the page (one batch)."""
    if not ids:
        return {}
    try:
        features = batch_features(services.engine, ids, services.policy(), now_us)
        scored = score(services.models.current, features, services.settings.top_reasons)
    except Exception:  # reasons are a help: the list stands without them
        log.exception("top reasons failed for the at-risk page")
        return {}
    if "churn_reasons" not in scored:
        return {}
    return {
        str(c): reasons_list(r)
        for c, r in zip(scored["customer_id"], scored["churn_reasons"], strict=True)
    }


@router.get("/dashboard/at-risk.csv")
def at_risk_csv(
    request: Request,
    min_probability: str | None = None,
    region: str | None = None,
) -> Response:
    visitor = _visitor(request)
    _require(request, visitor, "predictions:read")
    services = _services(request)
    filters = _filters(min_probability, region, None)
    if filters.error:
        raise PageError(422, "Filter not valid", filters.error)
    if not services.models.current.ready:
        raise PageError(503, "No model loaded", services.models.current.unavailable_reason())
    try:
        at_risk = _at_risk_list(services, services.now_us())
    except Problem as exc:
        raise PageError(exc.status, "At-risk list not available", exc.detail) from None
    rows = _filtered(at_risk.rows, filters)
    name = f"{at_risk.tier.lower()}-at-risk" + (f"-{filters.region}" if filters.region else "")
    columns = list(AtRiskOut.model_fields)
    return csv_response(rows.reindex(columns=columns), f"{quote(name, safe='-_')}.csv")


# --- customers ---------------------------------------------------------------------------------


@router.get("/dashboard/customers")
def find_customer(request: Request, customer_id: str | None = None) -> Response:
    visitor = _visitor(request)
    _require(request, visitor, "tiers:read")
    wanted = (customer_id or "").strip()
    if not wanted:
        return RedirectResponse("/dashboard", status_code=303)
    return RedirectResponse(f"/dashboard/customers/{quote(wanted, safe='')}", status_code=303)


@router.get(f"/dashboard/customers/{CUSTOMER}")
def customer_page(request: Request, customer_id: str, done: str | None = None) -> Response:
    visitor = _visitor(request)
    _require(request, visitor, "tiers:read")
    context = _customer_context(_services(request), visitor, customer_id)
    context["done"] = {
        "override": "Override saved.",
        "cleared": "Override removed: the rules tier applies again.",
    }.get(done or "")
    return _render(request, visitor, "customer.html", context)


def _customer_context(services: Any, visitor: Visitor, customer_id: str) -> dict[str, Any]:
    now_us = services.now_us()
    view = customer_view(services.engine, customer_id, now_us)
    if view is None:
        raise PageError(
            404, "Customer not found", f"no customer {customer_id!r} with an order in the store"
        )
    customer = customer_api.customer_out(view, now_us)
    progress = None
    if customer.next_tier is not None and customer.spend_to_next_tier is not None:
        target = customer.qualifying_spend + customer.spend_to_next_tier
        progress = {
            "tier": customer.next_tier,
            "target": target,
            "needed": customer.spend_to_next_tier,
            "share": 1.0 if target <= 0 else min(1.0, customer.qualifying_spend / target),
            "with_pending": 1.0
            if target <= 0
            else min(1.0, (customer.qualifying_spend + customer.pending_spend) / target),
        }
    ledger, ledger_note = None, None
    try:
        ledger = customer_ledger(services.engine, customer_id, now_us).to_dict()
    except StoreError as exc:
        ledger_note = str(exc)
    return {
        "page": "customer",
        "customer": customer,
        "progress": progress,
        "tiers": view.policy.tier_names,
        "tier_rank": {name: i for i, name in enumerate(view.policy.tier_names)},
        "history": list(reversed(customer.history)),
        "ledger": ledger,
        "ledger_note": ledger_note,
        "prediction": _prediction(services, visitor, customer_id, now_us),
        "error": None,
        "form": {"tier": customer.tier, "reason": "", "until": ""},
    }


def _prediction(services: Any, visitor: Visitor, customer_id: str, now_us: int) -> dict[str, Any]:
    """The customer's predictions, or a note saying why there are none."""
    if not visitor.can("predictions:read"):
        return {"note": "Your key does not have the predictions:read scope."}
    models = services.models.current
    if not models.ready:
        return {"note": models.unavailable_reason()}
    try:
        features = customer_features(services.engine, customer_id, services.policy(), now_us)
        if features is None or len(features) == 0:
            return {"note": "No features for this customer as of now."}
        row = score(models, features, services.settings.top_reasons).iloc[0].to_dict()
    except Problem as exc:
        return {"note": exc.detail}
    except Exception as exc:  # the rest of the page stands without predictions
        log.exception("prediction failed for customer %r", customer_id)
        return {"note": f"The prediction failed ({type(exc).__name__}); see the service log."}
    return {
        "note": None,
        **prediction_fields(row),
        **interval_fields(row),
        "versions": models.versions(),
        "kinds": model_kinds(models),
    }


def _form_failure(
    request: Request,
    visitor: Visitor,
    customer_id: str,
    message: str,
    status: int,
    form: dict[str, str],
) -> Response:
    context = _customer_context(_services(request), visitor, customer_id)
    context.update(error=message, form=form, done=None)
    return _render(request, visitor, "customer.html", context, status=status)


def _problem_failure(
    request: Request, visitor: Visitor, customer_id: str, exc: Problem, form: dict[str, str]
) -> Response:
    """The API handler's refusal on the form; an unknown customer is the 404 page."""
    if exc.status == 404:
        raise PageError(404, "Customer not found", exc.detail) from None
    return _form_failure(request, visitor, customer_id, exc.detail, exc.status, form)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "form"
    return f"{field}: {first.get('msg', 'not valid')}"


@router.post(f"/dashboard/customers/{CUSTOMER}/override")
def override_submit(
    request: Request,
    customer_id: str,
    tier: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=2_000)] = "",
    until: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Set an override through the API's own handler (same checks, same audit row)."""
    visitor = _visitor(request)
    principal = _require(request, visitor, "admin")
    _check_csrf(visitor, csrf_token)
    form = {"tier": tier, "reason": reason, "until": until}
    if not reason.strip():
        return _form_failure(
            request,
            visitor,
            customer_id,
            "A reason is required (it is kept in the audit log).",
            422,
            form,
        )
    services = _services(request)
    try:
        body = OverrideIn(tier=tier, reason=reason.strip(), until=until.strip() or None)
        customer_api.put_override(customer_id, body, principal, services, services.now_us())
    except ValidationError as exc:
        return _form_failure(request, visitor, customer_id, _validation_message(exc), 422, form)
    except Problem as exc:
        return _problem_failure(request, visitor, customer_id, exc, form)
    log.info("dashboard override of %r to %r by %r", customer_id, tier, principal.name)
    url = f"/dashboard/customers/{quote(customer_id, safe='')}?done=override"
    return RedirectResponse(url, status_code=303)


@router.post(f"/dashboard/customers/{CUSTOMER}/override/clear")
def override_clear(
    request: Request,
    customer_id: str,
    reason: Annotated[str, Form(max_length=2_000)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Remove an override through the API's own handler (audited)."""
    visitor = _visitor(request)
    principal = _require(request, visitor, "admin")
    _check_csrf(visitor, csrf_token)
    form = {"tier": "", "reason": "", "until": ""}
    if not reason.strip():
        return _form_failure(
            request, visitor, customer_id, "A reason is required to remove an override.", 422, form
        )
    services = _services(request)
    try:
        customer_api.delete_override(
            customer_id, principal, services, services.now_us(), reason.strip()
        )
    except Problem as exc:
        return _problem_failure(request, visitor, customer_id, exc, form)
    url = f"/dashboard/customers/{quote(customer_id, safe='')}?done=cleared"
    return RedirectResponse(url, status_code=303)
