from vramgate.cli import main

main()
