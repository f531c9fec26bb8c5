"""The serve wing: a trained model behind HTTP (`cnnctl serve`).

`model` picks and loads what is served (an exported file without TensorFlow, or the Keras
model), `uploads` reads request bodies within the limits every file meets, `batcher` scores
concurrent requests together, `metrics` counts them for Prometheus, `app` holds the routes and
the page, `server` runs it all under uvicorn and drains it on SIGTERM.
"""
