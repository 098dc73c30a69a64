from .app.cli import main
from .app.running import exit_now

exit_now(main())
