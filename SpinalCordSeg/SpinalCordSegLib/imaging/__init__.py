"""Images and the files made from them: the ground floor of the Lib.

Reading and checking scans (``image_io``), grids (``grid``), BIDS names
(``naming``), atomic files and staging folders (``fileutil``), JSON sidecars
(``sidecar``), thresholds and binarization (``binarization``, ``thresholds``)
and the output set of one prediction (``outputs``).

May import: the Lib's root modules (``errors``, ``paths``, ``resources``) and
third-party libraries; nothing else of the Lib.

Example:
    >>> from SpinalCordSegLib.imaging.naming import output_name
    >>> output_name("sub-01_T2w", "SC", "seg")
    'sub-01_T2w_label-SC_seg.nii.gz'
"""
