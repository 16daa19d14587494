"""Publishing: the Hub push and the demo Space (the card is rendered by evop_hub.card)."""

from ..card import render
from ..models.card_files import write_card
from .push import PushConfig, PushResult, check_push, push
from .space import build_local_demo, serve

__all__ = ["PushConfig", "PushResult", "build_local_demo", "check_push", "push", "render", "serve", "write_card"]
