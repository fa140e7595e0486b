-- Hayat et al. (2021) labeled sample: the SDSS DR12 Main Galaxy Sample with spectroscopic
-- redshifts. CasJobs dialect (T-SQL), as a user would paste it into CasJobs (context DR12).
-- One row per spectrum: repeat spectra of one object are kept here and de-duplicated by the
-- `select` stage, which records what it dropped and why.
SELECT
    p.objID, p.ra, p.dec, p.l, p.b,
    p.run, p.rerun, p.camcol, p.field, p.obj, p.type, p.mode, p.clean, p.insideMask, p.flags,
    p.petroMag_u, p.petroMag_g, p.petroMag_r, p.petroMag_i, p.petroMag_z,
    p.petroMagErr_u, p.petroMagErr_g, p.petroMagErr_r, p.petroMagErr_i, p.petroMagErr_z,
    p.modelMag_u, p.modelMag_g, p.modelMag_r, p.modelMag_i, p.modelMag_z,
    p.extinction_u, p.extinction_g, p.extinction_r, p.extinction_i, p.extinction_z,
    p.petroR50_r,
    s.specObjID, s.z AS z_spec, s.zErr AS z_spec_err, s.zWarning, s.sciencePrimary,
    pz.z AS z_photo, pz.zErr AS z_photo_err,
    g.primtarget, g.e_bv_sfd
INTO MyDB.ssl_photoz_labeled
FROM SpecObjAll AS s
    JOIN PhotoObjAll AS p ON s.bestObjID = p.objID
    JOIN Photoz AS pz ON pz.objID = p.objID
    JOIN galSpecInfo AS g ON g.specObjID = s.specObjID
WHERE s.z > 0
    AND s.zWarning = 0
    AND s.targetType = 'SCIENCE'
    AND s.survey = 'sdss'
    AND s.class = 'GALAXY'
    AND g.primtarget >= 64
    AND p.clean = 1
    AND p.insideMask = 0
    AND p.petroMag_r - p.extinction_r <= 17.8
    AND s.z <= 0.4
