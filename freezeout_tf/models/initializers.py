"""Weight initialisation and layer defaults shared by the model builders.

They reproduce the original (PyTorch) FreezeOut networks (docs/algorithm.md §7):

* Conv kernels: N(0, 2 / (kh * kw * out_channels)). Keras' `fan_out` for a
  conv kernel of shape `(kh, kw, in, out)` is `kh * kw * out`, so this is
  `VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")`.
* BatchNorm: gamma = 1, beta = 0, and PyTorch's defaults for the rest:
  `epsilon=1e-5` and running-average momentum 0.1 (Keras `momentum=0.9`).
* Dense (DenseNet, WRN): PyTorch's default `nn.Linear` weight init,
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = `VarianceScaling(1/3, "fan_in",
  "uniform")`, bias 0.
* Dense (VGG classifier): N(0, 0.01^2), bias 0.

Each function returns a new object, so that no initializer instance (and its
seed) is shared between layers.
"""

import keras

__all__ = [
    "batch_norm",
    "conv2d",
    "conv_kernel_initializer",
    "dense",
    "pooled_classifier",
    "torch_linear_kernel_initializer",
    "vgg_dense_kernel_initializer",
]


def conv_kernel_initializer(seed=None):
    """N(0, 2 / (kh * kw * out_channels)), the original's conv init."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", seed=seed
    )


def torch_linear_kernel_initializer(seed=None):
    """PyTorch's default `nn.Linear` weight init: U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
    )


def vgg_dense_kernel_initializer(seed=None):
    """N(0, 0.01^2), the original VGG classifier's weight init."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01, seed=seed)


def conv2d(filters, kernel_size, strides=1, padding="same", use_bias=False,
           name=None):
    """A `Conv2D` with the original's init (and zero bias if any)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=conv_kernel_initializer(),
        bias_initializer="zeros",
        name=name,
    )


def batch_norm(name=None):
    """A `BatchNormalization` with PyTorch's defaults: gamma 1, beta 0,
    epsilon 1e-5, running statistics updated with weight 0.1."""
    return keras.layers.BatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        gamma_initializer="ones",
        beta_initializer="zeros",
        name=name,
    )


def pooled_classifier(num_classes, activation):
    """The DenseNet / WRN head: BN-ReLU-global average pool-Dense."""
    return keras.Sequential(
        [
            batch_norm(name="bn"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            dense(num_classes, activation=activation, name="fc"),
        ],
        name="head",
    )


def dense(units, kernel_initializer=None, activation=None, name=None):
    """A `Dense` with zero bias and, by default, PyTorch's weight init."""
    if kernel_initializer is None:
        kernel_initializer = torch_linear_kernel_initializer()
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=kernel_initializer,
        bias_initializer="zeros",
        name=name,
    )

