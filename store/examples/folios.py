# Folio sizes of a file's resident pages in the page cache (run as root: it needs
# the PFNs of /proc/self/pagemap and /proc/kpageflags). For diskwrites.rs:
# INSPECT=MS FOLIOS=store/examples/folios.py. It maps and touches only pages
# mincore reports resident.
import ctypes, os, struct, sys, collections
path = sys.argv[1]
libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
npages = size // 4096
base = libc.mmap(None, npages * 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
assert base not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
vec = (ctypes.c_ubyte * npages)()
assert libc.mincore(base, npages * 4096, vec) == 0, ctypes.get_errno()
resident = [i for i in range(npages) if vec[i] & 1]
for i in resident:
    ctypes.c_ubyte.from_address(base + i * 4096).value
pm = open("/proc/self/pagemap", "rb")
kf = open("/proc/kpageflags", "rb")
head_order = {}
cur = None
for i in resident:
    pm.seek(((base >> 12) + i) * 8)
    e = struct.unpack("<Q", pm.read(8))[0]
    if not (e >> 63) & 1:
        cur = None
        continue
    pfn = e & ((1 << 55) - 1)
    kf.seek(pfn * 8)
    f = struct.unpack("<Q", kf.read(8))[0]
    if (f >> 15) & 1:
        cur = i
        head_order[i] = 1
    elif (f >> 16) & 1 and cur is not None:
        head_order[cur] += 1
    else:
        head_order[i] = 1
        cur = None
sizes = collections.Counter(head_order.values())
print(f"folios {path}: {npages} pages, {len(resident)} resident; pages per folio -> folios:",
      dict(sorted(sizes.items())), "; pages in large folios:", len(resident) - sizes.get(1, 0))
