"""Values every part of the package agrees on."""

IGNORE_INDEX = 255  # the void label: datasets map unlabelled pixels to it; losses and metrics skip it
