"""The simulated model server: a multi-model LLM server (OpenAI + Ollama APIs) for demos and tests.

``profiles`` says what each model does (slots, timing, memory, faults), ``runtime``
keeps each model's live state (FIFO queue, loading), ``wire`` holds the API
formats, ``memory`` the really-allocated RAM, and ``server`` the aiohttp app.
"""

from exporter.simulator.profiles import (
    FaultProfile,
    ModelProfile,
    ProfileError,
    SimulatorProfile,
    builtin_profile,
    builtin_profile_names,
    load_profile,
    profile_from_dict,
    update_faults,
)
from exporter.simulator.server import Simulator, serve_simulator

__all__ = [
    "FaultProfile",
    "ModelProfile",
    "ProfileError",
    "Simulator",
    "SimulatorProfile",
    "builtin_profile",
    "builtin_profile_names",
    "load_profile",
    "profile_from_dict",
    "serve_simulator",
    "update_faults",
]
