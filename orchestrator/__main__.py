import sys

from orchestrator.console.main import main

sys.exit(main())
