from cathrepo.cli import main

main()
