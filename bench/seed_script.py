"""The plain Keras script cnnctl replaces (Keras' classic MNIST example): the benchmark's baseline.

Run on the same data as cnnctl (Fashion-MNIST from the same files); prints one JSON line:
fit seconds, training images/s, test accuracy, and the test accuracy and time after each epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from keras.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D  # noqa: E402
from keras.models import Sequential  # noqa: E402

from cnnctl.data.sources import load_builtin  # noqa: E402  (only to find the same files)


class EpochClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start, self.epochs = time.perf_counter(), []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            {
                "epoch": epoch + 1,
                "seconds": time.perf_counter() - self.start,
                "val_accuracy": float(logs["val_accuracy"]),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--mixed", action="store_true", help="mixed_float16 (GPU) as Keras' guide does it"
    )
    args = parser.parse_args()
    keras.utils.set_random_seed(42)
    if args.mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    data = load_builtin(args.dataset)
    x_train = data.x_train[: args.limit].reshape(-1, 28, 28, 1).astype("float32") / 255
    x_test = data.x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
    y_train = keras.utils.to_categorical(data.y_train[: args.limit], 10)
    y_test = keras.utils.to_categorical(data.y_test, 10)

    model = Sequential()
    model.add(Conv2D(32, kernel_size=(3, 3), activation="relu", input_shape=(28, 28, 1)))
    model.add(MaxPooling2D(pool_size=(2, 2)))
    model.add(Flatten())
    model.add(Dense(128, activation="relu"))
    model.add(Dropout(0.5))
    model.add(Dense(10, activation="softmax", dtype="float32"))
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    clock = EpochClock()
    started = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        callbacks=[clock],
        verbose=0,
    )
    fit_seconds = time.perf_counter() - started
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(
        json.dumps(
            {
                "fit_seconds": fit_seconds,
                "images_per_second": len(x_train) * args.epochs / fit_seconds,
                "test_accuracy": accuracy,
                "epochs": clock.epochs,
            }
        )
    )


if __name__ == "__main__":
    main()
