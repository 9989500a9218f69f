"""Data: datasets located on this machine (locate), decoded into uint8 arrays (sources, cache,
dataset), shaped into what a run trains on (pipeline), and augmented on device (augment,
mixup)."""
