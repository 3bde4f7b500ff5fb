"""Model training, evaluation and the MLflow registry (issue 6). One module per step:

- ``data``: cutoffs, features + labels (``features``), the purged temporal split;
- ``fit``: the LightGBM boosters with class weights, early stopping and calibration;
- ``model``: the pyfunc models (frozen input encoding, booster, calibrator, SHAP reasons);
- ``bgnbd``, ``baselines``, ``rfm``: BG/NBD by maximum likelihood and the honest baselines;
- ``metrics``, ``evaluate``, ``plots``: what a run reports and draws;
- ``train``: ``train_models`` (runs, artifacts, registration); ``registry``, ``tracking``;
- ``promote``: challenger vs champion; ``scoring``: ``score``; ``tune``: Optuna.

Nothing is imported here, so ``import training`` stays free.
"""
