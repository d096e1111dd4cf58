"""Applications: analyse a prediction, compare methods and models, perturbation analysis, data-set audits."""
