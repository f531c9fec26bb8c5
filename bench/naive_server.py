"""The server users write by hand today: FastAPI, and `model.predict` for every request.

    python bench/naive_server.py runs/fashion_mnist/model.keras 8001

The baseline of `bench/bench_serve.py`: the FastAPI tutorial's shape (an `UploadFile`, Pillow,
`model.predict` on a batch of one), answering the top class and its probability.
"""

from __future__ import annotations

import io
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, File, UploadFile  # noqa: E402
from PIL import Image  # noqa: E402

model = keras.saving.load_model(sys.argv[1], compile=False)
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008 (FastAPI's own idiom)
    image = Image.open(io.BytesIO(await file.read())).convert("L").resize((28, 28))
    x = np.asarray(image, dtype=np.float32)[None, :, :, None]
    probabilities = model.predict(x, verbose=0)[0]
    best = int(np.argmax(probabilities))
    return {"class": best, "probability": float(probabilities[best])}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
