"""The reference's converter command: `python dataset/tfrecords_to_pickle.py --dataset aircraft`.

Same as `mela data convert-tfrecords --dataset aircraft` (no TensorFlow needed).
"""

import sys

from mela.data_cli import main

if __name__ == "__main__":
    sys.exit(main(["convert-tfrecords", *sys.argv[1:]]))
