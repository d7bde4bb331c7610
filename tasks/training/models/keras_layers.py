"""Keras layers of the CNN that run faster on a CPU than Keras' own.

Imports TensorFlow, so `tasks.training.models.cnn` imports this module only when it fits
or loads a CNN.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="fashion_mnist")
class FusedBatchNormalization(keras.layers.Layer):
    """Batch normalisation in TensorFlow's fused kernel: one operation forward, one backward.

    Keras 3's BatchNormalization builds it from a dozen element-wise operations. Measured
    here on one thread, the fused kernel makes an epoch of the default CNN a third
    shorter (60 s to 40 s in bfloat16). Statistics, scale, offset and the moving averages
    stay in float32 whatever the compute dtype. Takes (batch, height, width, channels)
    or (batch, features) inputs and normalises the last axis.
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = momentum, epsilon

    def build(self, input_shape) -> None:
        channels = (input_shape[-1],)

        def weight(name: str, initializer: str, trainable: bool = True):
            return self.add_weight(
                shape=channels, initializer=initializer, trainable=trainable, name=name,
                dtype="float32", autocast=False,
            )  # fmt: skip

        self.gamma, self.beta = weight("gamma", "ones"), weight("beta", "zeros")
        self.moving_mean = weight("moving_mean", "zeros", trainable=False)
        self.moving_variance = weight("moving_variance", "ones", trainable=False)

    def call(self, inputs, training: bool = False):
        # The kernel takes images: features become 1x1 images with a channel each.
        images = inputs if len(inputs.shape) == 4 else inputs[:, None, None, :]
        if training:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                images, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            decay = 1 - self.momentum
            self.moving_mean.assign(self.moving_mean + decay * (mean - self.moving_mean))
            self.moving_variance.assign(
                self.moving_variance + decay * (variance - self.moving_variance)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                images, self.gamma, self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False,
            )  # fmt: skip
        return tf.reshape(outputs, tf.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return super().get_config() | {"momentum": self.momentum, "epsilon": self.epsilon}
