"""The scoring wing: a trained model applied to images. Scores of a split (`evaluate`),
predictions for files (`predict`), test-time augmentation (`tta`), exported copies (`export`)."""
