"""`python -m garmin_emulator`: serve the emulator (see garmin_emulator.cli)."""

from garmin_emulator.cli import main

raise SystemExit(main())
