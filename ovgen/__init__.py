"""ovgen: the LLM token loop by hand on OpenVINO.

    import ovgen
    model = ovgen.load()                                  # the prepared default model
    result = ovgen.generate(model, "What is the capital of France?", {"max_new_tokens": 32})
    for rec in ovgen.stream(model, [{"role": "user", "content": "Hi"}]):
        print(rec.text, end="", flush=True)
"""

from .config import GenerationConfig
from .generate import GenerationResult, SequenceResult, generate, stream
from .model import Model, load
from .processors import Chain, build_chain
from .profiling import Profile
from .search import Sampler, TokenRecord, greedy
from .session import Session, Snapshot

__all__ = [
    "Chain", "GenerationConfig", "GenerationResult", "Model", "Profile", "Sampler", "SequenceResult", "Session",
    "Snapshot", "TokenRecord", "build_chain", "generate", "greedy", "load", "stream",
]
__version__ = "0.1.0"
