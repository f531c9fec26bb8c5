"""The tune wing: an Optuna study (`study`) over a config's `tune:` section (`space`), run by
trial processes (`worker`), each trial an ordinary run; tables and plots in `report`."""
