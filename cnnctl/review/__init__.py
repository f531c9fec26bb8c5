"""The review wing: runs read back from their folders for people (`compare`, the HTML `page`).

It reads run folders only (config, metrics, evaluation, figures) and imports no TensorFlow;
it sits right below the command line, as it asks the tasks for each run's headline figure.
"""
