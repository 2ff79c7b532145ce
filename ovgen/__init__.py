"""ovgen: the LLM token loop by hand on OpenVINO.

    import ovgen
    model = ovgen.load()                                  # the prepared default model
    result = ovgen.generate(model, "What is the capital of France?", {"max_new_tokens": 32})
    for rec in ovgen.stream(model, [{"role": "user", "content": "Hi"}]):
        print(rec.text, end="", flush=True)
"""

from .choice import Candidates, Choice, Chooser, Greedy, Mirostat, Sampler, TokenChoice, build_chain, token_choice
from .config import GenerationConfig
from .generate import GenerationResult, SequenceResult, Stream, generate, stream
from .model import Model, load
from .processors import Chain, Stage, hf_processor
from .profiling import Profile
from .search import TokenRecord, greedy
from .kvstate import Snapshot
from .session import Session

__all__ = [
    "Candidates", "Chain", "Choice", "Chooser", "GenerationConfig", "GenerationResult", "Greedy", "Mirostat", "Model",
    "Profile", "Sampler", "SequenceResult", "Session", "Snapshot", "Stage", "Stream", "TokenChoice", "TokenRecord",
    "build_chain", "generate", "greedy", "hf_processor", "load", "stream", "token_choice",
]
__version__ = "0.1.0"
