"""The project's tests (a regular package, so that `tests.*` here wins over a top-level `tests` package that an
installed dependency may ship: isic-metadata 4.12.0 does)."""
