import sys

from mmfusion.cli import main

sys.exit(main())
