-- Hayat et al. (2021) unlabeled sample for pretraining: primary, clean galaxies of the imaging
-- survey with a Beck et al. (2016) photometric redshift, to the same dereddened Petrosian r limit
-- as the labeled sample. CasJobs dialect (T-SQL), context DR12.
-- The latitude cut (|b| > 15 deg), the photo-z cut (< 0.8) and the removal of labeled objects
-- are applied by the `select` stage, so that every object dropped there has a recorded reason.
SELECT
    p.objID, p.ra, p.dec, p.l, p.b,
    p.run, p.rerun, p.camcol, p.field, p.obj, p.type, p.mode, p.clean, p.insideMask, p.flags,
    p.petroMag_u, p.petroMag_g, p.petroMag_r, p.petroMag_i, p.petroMag_z,
    p.petroMagErr_u, p.petroMagErr_g, p.petroMagErr_r, p.petroMagErr_i, p.petroMagErr_z,
    p.modelMag_u, p.modelMag_g, p.modelMag_r, p.modelMag_i, p.modelMag_z,
    p.extinction_u, p.extinction_g, p.extinction_r, p.extinction_i, p.extinction_z,
    p.petroR50_r,
    pz.z AS z_photo, pz.zErr AS z_photo_err
INTO MyDB.ssl_photoz_unlabeled
FROM PhotoObjAll AS p
    JOIN Photoz AS pz ON pz.objID = p.objID
WHERE p.type = 3
    AND p.mode = 1
    AND p.clean = 1
    AND p.insideMask = 0
    AND p.petroMag_r - p.extinction_r <= 17.8
