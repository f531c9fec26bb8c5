"""The model wing: a config's layers -> a keras.Sequential (`builder`), blocks that are one
layer of it (`blocks`: Residual, Backbone)."""
