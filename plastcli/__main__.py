from plastcli.cli import main

main()
