"""Text conditioning: the UMT5-XXL encoder in JAX, its tokenizer, the official prompt embedding.

```
encoder = o2a_jax.convert.load_text_encoder(path, dtype=jnp.bfloat16)   # <release>/text_encoder
tokenizer = o2a_jax.text.load_tokenizer(path)                          # <release>/tokenizer
embeds = o2a_jax.text.embed_prompts(encoder, tokenizer, prompts, max_length=512)
```
"""

from o2a_jax.text.embed import (  # noqa: F401
  DEFAULT_NEGATIVE_PROMPT,
  INFERENCE_LENGTH,
  REPRODUCE_NEGATIVE_PROMPT,
  TRAINING_LENGTH,
  EmbeddingCache,
  embed_prompts,
)
from o2a_jax.text.tokenizer import Tokenizer, load_tokenizer, prompt_clean  # noqa: F401
from o2a_jax.text.umt5 import (  # noqa: F401
  UMT5_XXL,
  UMT5Config,
  UMT5Encoder,
  abstract_text_encoder,
  build_text_encoder,
)
