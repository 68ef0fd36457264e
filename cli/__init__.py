"""The top layer: the `kiln` command line (`cli.main`) and the generate/chat front end (`cli.chat`)."""
