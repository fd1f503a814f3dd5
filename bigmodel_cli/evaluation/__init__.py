"""Evaluation: predictions, scikit-learn metrics, reports, plots and quality gates."""
