"""The argument parser every script uses: a mistyped option is one line naming the closest
valid one, then one line pointing at --help (argparse prints the whole usage first, 49 lines
for train_fusion.py), and every option must carry a description.

    parser = ArgumentParser(__doc__)
    parser.add_argument("--out", required=True, help="dataset root to write")
    args = parser.parse_args(argv)
"""
from __future__ import annotations

import argparse
import difflib


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the script's docstring shown as written, errors without the usage
    dump, "did you mean" for unknown options, and a help text required of every option."""

    def __init__(self, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # Checked here rather than in add_argument, which groups bypass; any call of a script,
        # --help included, finds an option added without a description.
        undescribed = [a.option_strings[0] if a.option_strings else a.dest
                       for a in self._actions if not a.help]
        if undescribed:
            raise TypeError(f"{self.prog}: options without a help text: "
                            f"{', '.join(undescribed)}")
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras))
        return parsed

    def unknown(self, extras: list[str]) -> str:
        """The error for arguments no option takes: each unknown option with the closest valid
        one (the values after it are left out: they belong to the mistyped option)."""
        options = list(self._option_string_actions)
        unknown = {}  # option -> its closest valid option, or None
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1)
                unknown[extra] = close[0] if close else None
        if not unknown:
            return f"unrecognized arguments: {' '.join(extras)}"
        if len(unknown) == 1:
            ((option, close),) = unknown.items()
            return f"unknown option {option}" + (f"; did you mean {close}?" if close else "")
        return "unknown options: " + ", ".join(
            option + (f" (did you mean {close}?)" if close else "")
            for option, close in unknown.items())

    def error(self, message: str):
        """The error first, then where to find the options; no usage dump."""
        self.exit(2, f"{self.prog}: error: {message}\n"
                     f"{self.prog}: run with --help for every option and what it does\n")
