"""Total verifiers: `verify(completion, example) -> Score`, never raising."""
