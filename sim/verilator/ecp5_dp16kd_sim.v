// Simulation model of the ECP5 18 Kbit block RAM DP16KD, which Yosys ships only as a black box
// (the stub in share/ecp5/cells_sim.v), for the configurations synth_ecp5 maps memories to
// (share/lattice/brams_map_16kd.v). celosia.sim.gatelevel checks every instance's parameters
// against what this model covers before it Verilates a netlist (anything else stops with
// GateLevelError instead of simulating wrongly).
//
// Two read/write ports (DATA_WIDTH 1, 2, 4, 9 or 18) over 1024 rows of 18 bits, or the pseudo
// dual-port 36-bit mode Yosys maps PDPW16KD to (DATA_WIDTH_A 36: A writes, B reads). Width 18:
// address ADx[13:4], ADx0/ADx1 enable the low and the high 9-bit byte; width 9: ADx[13:3] (ADx3
// picks the half row); widths 4/2/1: ADx[13:2]/[13:1]/[13:0] over the 16 data bits of a row
// (bits 7:0 and 16:9). CEx gates reads and writes; WRITEMODE NORMAL keeps the output during a
// write, WRITETHROUGH shows the row as written, READBEFOREWRITE the row before it. REGMODE
// NOREG or OUTREG (an output register enabled by OCEx), RSTx clears the output (SYNC or ASYNC),
// CLKxMUX "INV" clocks on the falling edge. Initial contents: INITVAL_00..3F, 16 rows of 20
// bits each (18 used) per value, row 0 in the low bits (Yosys's init_slice).
module DP16KD(DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0, ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0, CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0, DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0, DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0, ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0, CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0, DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0);
    parameter DATA_WIDTH_A = 18;
    parameter DATA_WIDTH_B = 18;
    parameter REGMODE_A = "NOREG";
    parameter REGMODE_B = "NOREG";
    parameter RESETMODE = "SYNC";
    parameter ASYNC_RESET_RELEASE = "SYNC";
    parameter CSDECODE_A = "0b000";
    parameter CSDECODE_B = "0b000";
    parameter WRITEMODE_A = "NORMAL";
    parameter WRITEMODE_B = "NORMAL";
    parameter DIA17MUX = "DIA17";
    parameter DIA16MUX = "DIA16";
    parameter DIB17MUX = "DIB17";
    parameter DIB16MUX = "DIB16";
    parameter GSR = "ENABLED";
    parameter CLKAMUX = "CLKA";
    parameter CLKBMUX = "CLKB";
    parameter WEAMUX = "WEA";
    parameter WEBMUX = "WEB";
    parameter RSTAMUX = "RSTA";
    parameter RSTBMUX = "RSTB";
    parameter CEAMUX = "CEA";
    parameter CEBMUX = "CEB";
    parameter OCEAMUX = "OCEA";
    parameter OCEBMUX = "OCEB";
    parameter INIT_DATA = "STATIC";
    parameter [319:0] INITVAL_00 = 320'h0;
    parameter [319:0] INITVAL_01 = 320'h0;
    parameter [319:0] INITVAL_02 = 320'h0;
    parameter [319:0] INITVAL_03 = 320'h0;
    parameter [319:0] INITVAL_04 = 320'h0;
    parameter [319:0] INITVAL_05 = 320'h0;
    parameter [319:0] INITVAL_06 = 320'h0;
    parameter [319:0] INITVAL_07 = 320'h0;
    parameter [319:0] INITVAL_08 = 320'h0;
    parameter [319:0] INITVAL_09 = 320'h0;
    parameter [319:0] INITVAL_0A = 320'h0;
    parameter [319:0] INITVAL_0B = 320'h0;
    parameter [319:0] INITVAL_0C = 320'h0;
    parameter [319:0] INITVAL_0D = 320'h0;
    parameter [319:0] INITVAL_0E = 320'h0;
    parameter [319:0] INITVAL_0F = 320'h0;
    parameter [319:0] INITVAL_10 = 320'h0;
    parameter [319:0] INITVAL_11 = 320'h0;
    parameter [319:0] INITVAL_12 = 320'h0;
    parameter [319:0] INITVAL_13 = 320'h0;
    parameter [319:0] INITVAL_14 = 320'h0;
    parameter [319:0] INITVAL_15 = 320'h0;
    parameter [319:0] INITVAL_16 = 320'h0;
    parameter [319:0] INITVAL_17 = 320'h0;
    parameter [319:0] INITVAL_18 = 320'h0;
    parameter [319:0] INITVAL_19 = 320'h0;
    parameter [319:0] INITVAL_1A = 320'h0;
    parameter [319:0] INITVAL_1B = 320'h0;
    parameter [319:0] INITVAL_1C = 320'h0;
    parameter [319:0] INITVAL_1D = 320'h0;
    parameter [319:0] INITVAL_1E = 320'h0;
    parameter [319:0] INITVAL_1F = 320'h0;
    parameter [319:0] INITVAL_20 = 320'h0;
    parameter [319:0] INITVAL_21 = 320'h0;
    parameter [319:0] INITVAL_22 = 320'h0;
    parameter [319:0] INITVAL_23 = 320'h0;
    parameter [319:0] INITVAL_24 = 320'h0;
    parameter [319:0] INITVAL_25 = 320'h0;
    parameter [319:0] INITVAL_26 = 320'h0;
    parameter [319:0] INITVAL_27 = 320'h0;
    parameter [319:0] INITVAL_28 = 320'h0;
    parameter [319:0] INITVAL_29 = 320'h0;
    parameter [319:0] INITVAL_2A = 320'h0;
    parameter [319:0] INITVAL_2B = 320'h0;
    parameter [319:0] INITVAL_2C = 320'h0;
    parameter [319:0] INITVAL_2D = 320'h0;
    parameter [319:0] INITVAL_2E = 320'h0;
    parameter [319:0] INITVAL_2F = 320'h0;
    parameter [319:0] INITVAL_30 = 320'h0;
    parameter [319:0] INITVAL_31 = 320'h0;
    parameter [319:0] INITVAL_32 = 320'h0;
    parameter [319:0] INITVAL_33 = 320'h0;
    parameter [319:0] INITVAL_34 = 320'h0;
    parameter [319:0] INITVAL_35 = 320'h0;
    parameter [319:0] INITVAL_36 = 320'h0;
    parameter [319:0] INITVAL_37 = 320'h0;
    parameter [319:0] INITVAL_38 = 320'h0;
    parameter [319:0] INITVAL_39 = 320'h0;
    parameter [319:0] INITVAL_3A = 320'h0;
    parameter [319:0] INITVAL_3B = 320'h0;
    parameter [319:0] INITVAL_3C = 320'h0;
    parameter [319:0] INITVAL_3D = 320'h0;
    parameter [319:0] INITVAL_3E = 320'h0;
    parameter [319:0] INITVAL_3F = 320'h0;
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0;
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0;
    input CEA, OCEA, CLKA, WEA, RSTA;
    input CSA2, CSA1, CSA0;
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0;
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0;
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0;
    input CEB, OCEB, CLKB, WEB, RSTB;
    input CSB2, CSB1, CSB0;
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0;

    localparam [64*320-1:0] INIT = {INITVAL_3F, INITVAL_3E, INITVAL_3D, INITVAL_3C, INITVAL_3B, INITVAL_3A, INITVAL_39, INITVAL_38, INITVAL_37, INITVAL_36, INITVAL_35, INITVAL_34, INITVAL_33, INITVAL_32, INITVAL_31, INITVAL_30, INITVAL_2F, INITVAL_2E, INITVAL_2D, INITVAL_2C, INITVAL_2B, INITVAL_2A, INITVAL_29, INITVAL_28, INITVAL_27, INITVAL_26, INITVAL_25, INITVAL_24, INITVAL_23, INITVAL_22, INITVAL_21, INITVAL_20, INITVAL_1F, INITVAL_1E, INITVAL_1D, INITVAL_1C, INITVAL_1B, INITVAL_1A, INITVAL_19, INITVAL_18, INITVAL_17, INITVAL_16, INITVAL_15, INITVAL_14, INITVAL_13, INITVAL_12, INITVAL_11, INITVAL_10, INITVAL_0F, INITVAL_0E, INITVAL_0D, INITVAL_0C, INITVAL_0B, INITVAL_0A, INITVAL_09, INITVAL_08, INITVAL_07, INITVAL_06, INITVAL_05, INITVAL_04, INITVAL_03, INITVAL_02, INITVAL_01, INITVAL_00};
    reg [17:0] mem [0:1023];
    integer i;
    initial
        for (i = 0; i < 1024; i = i + 1)
            mem[i] = INIT[i * 20 +: 18];


    // The bits of a row a word of ``width`` at address ``ad`` covers.
    function [17:0] word_mask(input integer width, input [13:0] ad);
        case (width)
            18: word_mask = 18'h3ffff;
            9: word_mask = ad[3] ? 18'h3fe00 : 18'h001ff;
            4: word_mask = 18'hf << ((ad[3] ? 9 : 0) + 4 * ad[2]);
            2: word_mask = 18'h3 << ((ad[3] ? 9 : 0) + 2 * ad[2:1]);
            default: word_mask = 18'h1 << ((ad[3] ? 9 : 0) + ad[2:0]);
        endcase
    endfunction
    // The bit of the row where that word starts.
    function integer word_lsb(input integer width, input [13:0] ad);
        case (width)
            18: word_lsb = 0;
            9: word_lsb = ad[3] ? 9 : 0;
            4: word_lsb = (ad[3] ? 9 : 0) + 4 * ad[2];
            2: word_lsb = (ad[3] ? 9 : 0) + 2 * ad[2:1];
            default: word_lsb = (ad[3] ? 9 : 0) + ad[2:0];
        endcase
    endfunction
    // The bits a write changes: the word, and at width 18 only the enabled bytes (ADx1, ADx0).
    function [17:0] write_mask(input integer width, input [13:0] ad);
        if (width == 18)
            write_mask = {{9{ad[1]}}, {9{ad[0]}}};
        else
            write_mask = word_mask(width, ad);
    endfunction

    wire [13:0] ad_a = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [13:0] ad_b = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire [17:0] di_a = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [17:0] di_b = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
    wire clk_a = CLKAMUX == "INV" ? ~CLKA : CLKA;
    wire clk_b = CLKBMUX == "INV" ? ~CLKB : CLKB;
    wire [17:0] old_a = mem[ad_a[13:4]];
    wire [17:0] old_b = mem[ad_b[13:4]];
    wire [17:0] wm_a = write_mask(DATA_WIDTH_A, ad_a);
    wire [17:0] wm_b = write_mask(DATA_WIDTH_B, ad_b);
    wire [17:0] new_a = (old_a & ~wm_a) | ((di_a << word_lsb(DATA_WIDTH_A, ad_a)) & wm_a);
    wire [17:0] new_b = (old_b & ~wm_b) | ((di_b << word_lsb(DATA_WIDTH_B, ad_b)) & wm_b);
    // What a read returns: the word of the row, aligned to bit 0.
    wire [17:0] rd_old_a = (old_a & word_mask(DATA_WIDTH_A, ad_a)) >> word_lsb(DATA_WIDTH_A, ad_a);
    wire [17:0] rd_new_a = (new_a & word_mask(DATA_WIDTH_A, ad_a)) >> word_lsb(DATA_WIDTH_A, ad_a);
    wire [17:0] rd_old_b = (old_b & word_mask(DATA_WIDTH_B, ad_b)) >> word_lsb(DATA_WIDTH_B, ad_b);
    wire [17:0] rd_new_b = (new_b & word_mask(DATA_WIDTH_B, ad_b)) >> word_lsb(DATA_WIDTH_B, ad_b);

    reg [17:0] rd_a = 18'h0, rd_b = 18'h0, out_a = 18'h0, out_b = 18'h0;
    generate
        if (RESETMODE == "ASYNC") begin : async_reset
            always @(posedge clk_a or posedge RSTA)
                if (RSTA) rd_a <= 18'h0;
                else if (CEA && (!WEA || WRITEMODE_A != "NORMAL"))
                    rd_a <= WEA && WRITEMODE_A == "WRITETHROUGH" ? rd_new_a : rd_old_a;
            always @(posedge clk_b or posedge RSTB)
                if (RSTB) rd_b <= 18'h0;
                else if (CEB && (!WEB || WRITEMODE_B != "NORMAL"))
                    rd_b <= WEB && WRITEMODE_B == "WRITETHROUGH" ? rd_new_b : rd_old_b;
        end else begin : sync_reset
            always @(posedge clk_a)
                if (RSTA) rd_a <= 18'h0;
                else if (CEA && (!WEA || WRITEMODE_A != "NORMAL"))
                    rd_a <= WEA && WRITEMODE_A == "WRITETHROUGH" ? rd_new_a : rd_old_a;
            always @(posedge clk_b)
                if (RSTB) rd_b <= 18'h0;
                else if (CEB && (!WEB || WRITEMODE_B != "NORMAL"))
                    rd_b <= WEB && WRITEMODE_B == "WRITETHROUGH" ? rd_new_b : rd_old_b;
        end
    endgenerate
    // Pseudo dual port, 36 bits (DATA_WIDTH_A 36: port A writes, port B reads): a word is the
    // row pair {ADx[13:5], 0} (bits 17:0, on DIA/DOA) and {ADx[13:5], 1} (bits 35:18, on
    // DIB/DOB); ADA0..ADA3 enable its four 9-bit bytes.
    localparam PDP_W = DATA_WIDTH_A == 36, PDP_R = DATA_WIDTH_B == 36;
    wire [9:0] row_lo_a = {ad_a[13:5], 1'b0}, row_hi_a = {ad_a[13:5], 1'b1};
    wire [17:0] m_lo = {{9{ad_a[1]}}, {9{ad_a[0]}}}, m_hi = {{9{ad_a[3]}}, {9{ad_a[2]}}};
    reg [17:0] rd36_lo = 18'h0, rd36_hi = 18'h0, out36_lo = 18'h0, out36_hi = 18'h0;
    always @(posedge clk_a)
        if (CEA && WEA) begin
            if (PDP_W) begin
                mem[row_lo_a] <= (mem[row_lo_a] & ~m_lo) | (di_a & m_lo);
                mem[row_hi_a] <= (mem[row_hi_a] & ~m_hi) | (di_b & m_hi);
            end else
                mem[ad_a[13:4]] <= new_a;
        end
    always @(posedge clk_b)
        if (RSTB) begin
            rd36_lo <= 18'h0;
            rd36_hi <= 18'h0;
        end else if (CEB) begin
            rd36_lo <= mem[{ad_b[13:5], 1'b0}];
            rd36_hi <= mem[{ad_b[13:5], 1'b1}];
        end
    always @(posedge clk_b)
        if (RSTB) begin
            out36_lo <= 18'h0;
            out36_hi <= 18'h0;
        end else if (OCEB) begin
            out36_lo <= rd36_lo;
            out36_hi <= rd36_hi;
        end
    always @(posedge clk_b)
        if (CEB && WEB && !PDP_R)
            mem[ad_b[13:4]] <= new_b;
    always @(posedge clk_a)
        if (RSTA) out_a <= 18'h0;
        else if (OCEA) out_a <= rd_a;
    always @(posedge clk_b)
        if (RSTB) out_b <= 18'h0;
        else if (OCEB) out_b <= rd_b;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0} =
        PDP_R ? (REGMODE_B == "OUTREG" ? out36_lo : rd36_lo) : REGMODE_A == "OUTREG" ? out_a : rd_a;
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0} =
        PDP_R ? (REGMODE_B == "OUTREG" ? out36_hi : rd36_hi) : REGMODE_B == "OUTREG" ? out_b : rd_b;
endmodule
