from orchestrify.cli import main

main()
