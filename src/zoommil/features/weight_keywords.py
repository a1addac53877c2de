"""The ``--weights`` values that name no file, importable without torch or the encoder registry:
every command's parser (`zoommil.commands.options`) needs them, and importing the registry
there would tie every command's code hash to the encoder families it loads by name."""

#: ``weights`` keywords; anything else is a path (a file, or a folder holding the spec's file).
WEIGHT_KEYWORDS = ("imagenet", "hf", "random")
