"""How ``emoslm chat`` shows a conversation: one JSON line per event (``--events``), or a readable turn."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from emoslm.agents.events import Event, Reply


def print_event(event: Event) -> None:
    """The event in its wire form, one JSON object per line (for pipes and other programs)."""
    print(json.dumps(event.to_wire(), ensure_ascii=False), flush=True)


def print_turn(console: Console, path: Path, reply: Reply, show_think: bool = True) -> None:
    """What was heard, the emotion (perceived, or named by the think), the think and the reply."""
    console.print(f"[bold]user[/] ({path.name}): {reply.transcript}", highlight=False)
    estimate = reply.emotion
    if estimate is not None and estimate.acoustic is not None:
        words = estimate.textual.tag if estimate.textual else "-"
        console.print(f"  emotion: [magenta]{estimate.tag}[/] {estimate.confidence:.2f} "
                      f"(voice {estimate.acoustic.tag}, words {words})", highlight=False)
    elif reply.think_emotion:
        console.print(f"  emotion named in the think: [magenta]{reply.think_emotion}[/]", highlight=False)
    if show_think and reply.think:
        console.print(f"  [dim]think: {reply.think}[/]", highlight=False)
    console.print(f"[bold]assistant[/]: {reply.text}", highlight=False)
    if "first_audio" in reply.timings:
        console.print(f"  [dim]first audio {reply.timings['first_audio']:.2f} s after the end of speech, "
                      f"whole turn {reply.timings['total']:.2f} s[/]", highlight=False)
