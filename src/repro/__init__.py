"""The reproduction book: one parameterized notebook per paper on top of one shared package.

`repro.core` holds the shared building blocks, `repro.<chapter>.<paper>` one module per paper,
`repro.profiles` and `repro.claims` the notebook-side API, `repro.runner` and `repro.site` the CLI side.
"""

__version__ = "0.1.0"
