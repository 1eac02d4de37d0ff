"""`python -m garmin_emulator`: serve the emulator (see garmin_emulator.emulator.main)."""

from garmin_emulator.emulator import main

raise SystemExit(main())
