from apidistill.cli import main

main()
