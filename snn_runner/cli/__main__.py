from snn_runner.cli import main

main()
