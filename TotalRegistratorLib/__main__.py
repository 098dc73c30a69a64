from .app.cli import console_main

console_main()
