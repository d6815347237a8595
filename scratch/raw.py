import sys
from common import *
G, D, data = load(sys.argv[1])
print("raw", fmt((eval_digits if sys.argv[1]=="digits" else eval_ring)(raw_samples(G, 2000), data)))
