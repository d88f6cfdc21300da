"""Tiny KerasHub classifiers for the transformer tests (random weights from
a config: nothing is downloaded)."""

import keras
import keras_hub
import numpy as np

SEQ, VOCAB, CLASSES = 8, 50, 3
TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def bert_classifier(seed=0, dropout=0.0, num_layers=3, head="pooled"):
    """BertBackbone + Dense head, on the backbone's pooled output (its
    [CLS] position through the pooler) or on `sequence_output[:, 0]`."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ,
        dropout=dropout,
    )
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in TEXT_INPUTS}
    outputs = backbone(inputs)
    if head == "pooled":
        features = outputs["pooled_output"]
    else:
        features = outputs["sequence_output"][:, 0, :]
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(inputs, logits, name="bert_classifier")


def vit_classifier(seed=0, dropout=0.0, num_layers=3):
    """ViTBackbone + average pooling of its sequence output + Dense head."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=num_layers,
        num_heads=2, hidden_dim=16, mlp_dim=32, dropout_rate=dropout,
    )
    images = keras.Input((16, 16, 3), name="images")
    features = keras.layers.GlobalAveragePooling1D()(backbone(images))
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(images, logits, name="vit_classifier")


def deit_classifier(seed=0, dropout=0.0, num_layers=3):
    """DeiTBackbone (its encoder returns empty hidden-state and score
    tensors beside the hidden state, and its blocks `None` scores) +
    average pooling + Dense head."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=num_layers,
        num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout_rate=dropout,
    )
    images = keras.Input((16, 16, 3), name="images")
    features = keras.layers.GlobalAveragePooling1D(name="pool")(backbone(images))
    logits = keras.layers.Dense(CLASSES, name="classifier")(features)
    return keras.Model(images, logits, name="deit_classifier")


def text_data(n=32, seed=0):
    """Token ids with a padding mask that really masks: each example has
    2..SEQ real tokens, the rest padded with random ids (so that a mask
    that did not mask would change the output)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype("int32")
    x = {
        "token_ids": rng.integers(1, VOCAB, size=(n, SEQ)).astype("int32"),
        "segment_ids": (rng.random((n, SEQ)) < 0.5).astype("int32") * mask,
        "padding_mask": mask,
    }
    y = (x["token_ids"][:, 0] % CLASSES).astype("int32")
    return x, y


def image_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 16, 16, 3)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


LM_SEQ, LM_VOCAB = 12, 64


def gpt2_causal_lm(seed=0, num_layers=2):
    """GPT2CausalLM: its token embedding is tied (the lookup in the first
    unit and the output projection in the head read one variable)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=LM_VOCAB, num_layers=num_layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, dropout=0.0,
        max_sequence_length=LM_SEQ,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone,
                                         preprocessor=None)


def llama3_causal_lm(seed=0, num_layers=2):
    """Llama3CausalLM, untied: the lookup reads `embeddings`, the output
    projection `reverse_embeddings`."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=LM_VOCAB, num_layers=num_layers, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone,
                                           preprocessor=None)


def gemma3_causal_lm(seed=0, num_layers=2):
    """Gemma3CausalLM, tied: the task calls its backbone as
    `backbone(inputs=inputs)` (a keyword, where GPT-2 passes it
    positionally)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=LM_VOCAB, image_size=16, num_layers=num_layers,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
        intermediate_dim=32, head_dim=8,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone,
                                           preprocessor=None)


def lm_data(n=16, seed=0):
    """`(x, y, sample_weight)` as CausalLM preprocessing makes them: token
    ids and padding mask, the ids shifted by one as labels, and the padding
    mask (shifted) as the token loss' sample weight. Each example has
    3..LM_SEQ real tokens; padding ids are random, so that a loss that did
    not mask would see them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, LM_VOCAB, size=(n, LM_SEQ + 1)).astype("int32")
    lengths = rng.integers(3, LM_SEQ + 2, size=n)
    mask = (np.arange(LM_SEQ + 1)[None, :] < lengths[:, None]).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype("float32")
