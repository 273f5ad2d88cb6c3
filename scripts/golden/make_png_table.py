#!/usr/bin/env python3
"""Writes Tests/Golden/png/: small PNGs of every colour type and bit depth (1, 2, 4, 8, 16; grey, grey + alpha,
RGB, RGBA, palette with and without tRNS, grey/RGB with tRNS; interlaced; with gAMA, sRGB, iCCP chunks) and
table.json with the 8-bit samples an independent decoder (pypng's Reader.asDirect) reads from each, scaled as
the PNG spec scales samples: round(v * 255 / (2^depth - 1)). PNGTests.testDecodedSamplesMatchTheTable checks
PNG.decode against it.

  /work/venv/bin/python scripts/golden/make_png_table.py
"""
import io, json, os, random, struct, zlib
import png
from PIL import ImageCms

OUT = os.path.join(os.path.dirname(__file__), "../../Tests/Golden/png")
os.makedirs(OUT, exist_ok=True)
rnd = random.Random(16)
W, H = 7, 5  # odd sizes: partial bytes at 1/2/4 bits, every Adam7 pass partly filled
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def insert_chunks(data, chunks):
    """Ancillary colour chunks go before PLTE/IDAT: insert them right after IHDR (8 + 25 bytes)."""
    return data[:33] + b"".join(chunk(k, b) for k, b in chunks) + data[33:]


def write(name, rows, extra_chunks=(), **kw):
    buf = io.BytesIO()
    png.Writer(**kw).write(buf, rows)
    data = insert_chunks(buf.getvalue(), extra_chunks) if extra_chunks else buf.getvalue()
    with open(os.path.join(OUT, name + ".png"), "wb") as f:
        f.write(data)
    return data


table = []


def add(name, rows, note, extra_chunks=(), **kw):
    data = write(name, rows, extra_chunks, **kw)
    w, h, pixels, info = png.Reader(bytes=data).asDirect()
    depth = info["bitdepth"]
    planes = info["planes"]
    maxval = (1 << depth) - 1
    flat = [round(v * 255 / maxval) for row in pixels for v in row]
    assert len(flat) == w * h * planes
    table.append({"file": name + ".png", "note": note, "width": w, "height": h, "channels": planes, "pixels": flat})


def grid(maxval, planes, w=W, h=H):
    return [[rnd.randint(0, maxval) for _ in range(w * planes)] for _ in range(h)]


# The issue's input: 16-bit grey, samples v * 257, no gAMA/sRGB.
issue = [[v * 257 for v in (0, 32, 64, 128, 160, 192, 224, 255)]]
add("issue16_grey16", issue, "issue 16: 16-bit grey v*257, no colour chunks", width=8, height=1, greyscale=True, bitdepth=16)

for depth in (1, 2, 4, 8, 16):
    for interlace in (False, True):
        tag = "i" if interlace else ""
        add(f"grey{depth}{tag}", grid((1 << depth) - 1, 1), f"grey {depth}-bit{' interlaced' if interlace else ''}",
            width=W, height=H, greyscale=True, bitdepth=depth, interlace=interlace)
for depth in (8, 16):
    for interlace in (False, True):
        tag = "i" if interlace else ""
        m = (1 << depth) - 1
        add(f"greyalpha{depth}{tag}", grid(m, 2), f"grey + alpha {depth}-bit", width=W, height=H, greyscale=True, alpha=True, bitdepth=depth, interlace=interlace)
        add(f"rgb{depth}{tag}", grid(m, 3), f"RGB {depth}-bit", width=W, height=H, greyscale=False, bitdepth=depth, interlace=interlace)
        add(f"rgba{depth}{tag}", grid(m, 4), f"RGBA {depth}-bit", width=W, height=H, greyscale=False, alpha=True, bitdepth=depth, interlace=interlace)
for depth in (1, 2, 4, 8):
    n = 1 << depth
    pal = [(rnd.randint(0, 255), rnd.randint(0, 255), rnd.randint(0, 255)) for _ in range(n)]
    pal_a = [p + (rnd.randint(0, 255),) for p in pal]
    for interlace in (False, True):
        tag = "i" if interlace else ""
        add(f"palette{depth}{tag}", grid(n - 1, 1), f"palette {depth}-bit", width=W, height=H, palette=pal, bitdepth=depth, interlace=interlace)
    add(f"palette{depth}_trns", grid(n - 1, 1), f"palette {depth}-bit with tRNS", width=W, height=H, palette=pal_a, bitdepth=depth)
# tRNS on grey and RGB: the transparent colour becomes alpha 0, every other alpha 255.
g = grid(15, 1)
g[0][0] = 9
add("grey4_trns", g, "grey 4-bit with tRNS", width=W, height=H, greyscale=True, bitdepth=4, transparent=9)
g = grid(65535, 1)
g[1][2] = 4000
add("grey16_trns", g, "grey 16-bit with tRNS", width=W, height=H, greyscale=True, bitdepth=16, transparent=4000)
c = grid(255, 3)
c[0][0:3] = [10, 20, 30]
add("rgb8_trns", c, "RGB 8-bit with tRNS", width=W, height=H, greyscale=False, bitdepth=8, transparent=(10, 20, 30))
# Colour chunks: the stored samples are what decoding returns, whatever they say about display.
for depth in (8, 16):
    m = (1 << depth) - 1
    add(f"grey{depth}_gama1", grid(m, 1), f"grey {depth}-bit, gAMA 1.0 (linear)", width=W, height=H, greyscale=True, bitdepth=depth, gamma=1.0)
    add(f"rgb{depth}_gama045", grid(m, 3), f"RGB {depth}-bit, gAMA 0.45455", width=W, height=H, greyscale=False, bitdepth=depth, gamma=0.45455)
    add(f"rgb{depth}_srgb", grid(m, 3), f"RGB {depth}-bit, sRGB chunk", [(b"sRGB", b"\x00")], width=W, height=H, greyscale=False, bitdepth=depth)
    add(f"rgba{depth}_iccp", grid(m, 4), f"RGBA {depth}-bit, iCCP sRGB profile",
        [(b"iCCP", b"sRGB\x00\x00" + zlib.compress(SRGB_ICC))], width=W, height=H, greyscale=False, alpha=True, bitdepth=depth)
add("greyalpha16_gama1i", grid(65535, 2), "grey + alpha 16-bit, gAMA 1.0, interlaced", width=W, height=H, greyscale=True, alpha=True, bitdepth=16, gamma=1.0, interlace=True)

with open(os.path.join(OUT, "table.json"), "w") as f:
    json.dump({"made_by": "scripts/golden/make_png_table.py with pypng " + png.__version__ + " (Reader.asDirect)",
               "scaling": "round(v * 255 / (2^bitdepth - 1))", "images": table}, f, separators=(",", ":"))
print(len(table), "images;", sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT)), "bytes")
