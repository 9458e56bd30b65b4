"""Rebuild the shipped glyphs data set (same as `mela data build-glyphs`)."""

from mela.data.glyph_builder import main

raise SystemExit(main())
