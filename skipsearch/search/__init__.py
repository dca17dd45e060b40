"""The search: tasks and their references, scoring skip sets, objectives, baselines, Optuna studies,
their storages and workers, and the runner that ties a study config to them."""
