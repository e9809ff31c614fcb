"""A small CNN on the 8x8 digits in Keras 3, on the JAX backend (no TensorFlow); any Keras backend works.

Parameters travel as ``get_weights()``. ``get_model()`` is the Keras model, which MLflow's keras flavour logs (it
records the backend; the model server sets KERAS_BACKEND from it).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: Keras 3 defaults to TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402
from data_manager import DataManager, held_out  # noqa: E402
from flops_utils.ml_repo_templates import ModelManagerTemplate  # noqa: E402

EPOCHS, BATCH, LEARNING_RATE = 5, 32, 0.005


def images(x):
    return np.asarray(x, dtype=np.float32).reshape(-1, 8, 8, 1)


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        keras.utils.set_random_seed(0)
        self.model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ])
        self.model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy",
                           metrics=["accuracy"])

    def set_model_data(self):
        (x_train, self.y_train), (x_test, self.y_test) = DataManager().get_data()
        self.x_train, self.x_test = images(x_train), images(x_test)

    def get_model(self):
        return self.model

    def get_model_parameters(self):
        return self.model.get_weights()

    def set_model_parameters(self, parameters):
        self.model.set_weights(parameters)

    def fit_model(self):
        self.model.fit(self.x_train, self.y_train, epochs=EPOCHS, batch_size=BATCH, verbose=0)
        return len(self.y_train)

    def evaluate_model(self):
        loss, accuracy = self.model.evaluate(self.x_test, self.y_test, verbose=0)
        return loss, accuracy, len(self.y_test)

    def get_input_example(self):
        """Five held-out digits (no learner's data), shaped as the model takes them: (5, 8, 8, 1) float32."""
        return images(held_out()[0][:5])
