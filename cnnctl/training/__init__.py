"""The training wing: fit a model into a run folder (`fit`), what happens after each epoch
(`callbacks`), the checkpoint that resume needs (`checkpoint`), learning-rate schedules,
fine-tuning, and training on several devices or machines (`distribute`, `cluster`)."""
