#!/bin/sh
# Make Fashion-MNIST available to fastcnn: Debian's package where apt is usable,
# otherwise fastcnn downloads it from a mirror (sha256-verified) on first use.
set -e
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST: found in $DIR"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
    if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
        exit 0
    fi
    echo "Fashion-MNIST: apt-get failed; fastcnn will download it from a mirror on first use"
else
    echo "Fashion-MNIST: no apt-get; fastcnn will download it from a mirror on first use"
fi
