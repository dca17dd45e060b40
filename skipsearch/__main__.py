from skipsearch.cli import main

raise SystemExit(main())
