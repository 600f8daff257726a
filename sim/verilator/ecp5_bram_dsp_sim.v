// Simulation models of the two ECP5 cells Yosys ships only as black boxes (share/ecp5/cells_bb.v
// and the DP16KD stub in cells_sim.v): the sysDSP multiplier MULT18X18D and the 18 Kbit block RAM
// DP16KD, for the configurations synth_ecp5 and hdl/dsp.py instantiate. celosia.sim.gatelevel
// checks every instance's parameters against what these models cover before it Verilates a
// netlist (anything else stops with GateLevelError instead of simulating wrongly).
//
// MULT18X18D: P = A * B (SIGNEDA/SIGNEDB: the operand is two's complement), 36 bits, with the
// optional input registers (A and B with their sign controls), the pipeline register and the
// output register, each clocked by one of CLK0..3 with its own CE and RST (RESETMODE SYNC or
// ASYNC; a reset clears the register). SOURCEA/SOURCEB select the shift inputs SRIA/SRIB;
// SROA/SROB and ROA/ROB give the (registered) operands, ROC the C input.
//
// DP16KD: two read/write ports (DATA_WIDTH 1, 2, 4, 9 or 18) over 1024 rows of 18 bits, or the
// pseudo dual-port 36-bit mode Yosys maps PDPW16KD to (DATA_WIDTH_A 36: A writes, B reads). Width 18:
// address ADx[13:4], ADx0/ADx1 enable the low and the high 9-bit byte; width 9: ADx[13:3] (ADx3
// picks the half row); widths 4/2/1: ADx[13:2]/[13:1]/[13:0] over the 16 data bits of a row
// (bits 7:0 and 16:9). CEx gates reads and writes; WRITEMODE NORMAL keeps the output during a
// write, WRITETHROUGH shows the row as written, READBEFOREWRITE the row before it. REGMODE
// NOREG or OUTREG (an output register enabled by OCEx), RSTx clears the output (SYNC or ASYNC),
// CLKxMUX "INV" clocks on the falling edge. Initial contents: INITVAL_00..3F, 16 rows of 20
// bits each (18 used) per value, row 0 in the low bits.

module MULT18X18D(A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0, B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0, C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0, SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK3, CLK2, CLK1, CLK0, CE3, CE2, CE1, CE0, RST3, RST2, RST1, RST0, SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0, SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0, SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0, SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0, ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0, ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0, ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0, P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0, SIGNEDP);
    parameter REG_INPUTA_CLK = "NONE";
    parameter REG_INPUTA_CE = "CE0";
    parameter REG_INPUTA_RST = "RST0";
    parameter REG_INPUTB_CLK = "NONE";
    parameter REG_INPUTB_CE = "CE0";
    parameter REG_INPUTB_RST = "RST0";
    parameter REG_INPUTC_CLK = "NONE";
    parameter REG_INPUTC_CE = "CE0";
    parameter REG_INPUTC_RST = "RST0";
    parameter REG_PIPELINE_CLK = "NONE";
    parameter REG_PIPELINE_CE = "CE0";
    parameter REG_PIPELINE_RST = "RST0";
    parameter REG_OUTPUT_CLK = "NONE";
    parameter REG_OUTPUT_CE = "CE0";
    parameter REG_OUTPUT_RST = "RST0";
    parameter CLK0_DIV = "ENABLED";
    parameter CLK1_DIV = "ENABLED";
    parameter CLK2_DIV = "ENABLED";
    parameter CLK3_DIV = "ENABLED";
    parameter HIGHSPEED_CLK = "NONE";
    parameter GSR = "ENABLED";
    parameter CAS_MATCH_REG = "FALSE";
    parameter SOURCEB_MODE = "B_SHIFT";
    parameter MULT_BYPASS = "DISABLED";
    parameter RESETMODE = "SYNC";
    input A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0;
    input B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0;
    input C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0;
    input SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0;
    input SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0;
    input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB;
    input CLK3, CLK2, CLK1, CLK0;
    input CE3, CE2, CE1, CE0;
    input RST3, RST2, RST1, RST0;
    output SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0;
    output SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0;
    output ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0;
    output ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0;
    output ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0;
    output P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0;
    output SIGNEDP;

    wire [3:0] clk = {CLK3, CLK2, CLK1, CLK0};
    wire [3:0] ce = {CE3, CE2, CE1, CE0};
    wire [3:0] rst = {RST3, RST2, RST1, RST0};
    wire [17:0] a_in = SOURCEA ? {SRIA17, SRIA16, SRIA15, SRIA14, SRIA13, SRIA12, SRIA11, SRIA10, SRIA9, SRIA8, SRIA7, SRIA6, SRIA5, SRIA4, SRIA3, SRIA2, SRIA1, SRIA0} : {A17, A16, A15, A14, A13, A12, A11, A10, A9, A8, A7, A6, A5, A4, A3, A2, A1, A0};
    wire [17:0] b_in = SOURCEB ? {SRIB17, SRIB16, SRIB15, SRIB14, SRIB13, SRIB12, SRIB11, SRIB10, SRIB9, SRIB8, SRIB7, SRIB6, SRIB5, SRIB4, SRIB3, SRIB2, SRIB1, SRIB0} : {B17, B16, B15, B14, B13, B12, B11, B10, B9, B8, B7, B6, B5, B4, B3, B2, B1, B0};
    wire [17:0] c_in = {C17, C16, C15, C14, C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2, C1, C0};

    wire [18:0] a_q, b_q;     // operand and its sign control
    wire [17:0] c_q;
    celosia_dsp_reg #(.W(19), .CLK(REG_INPUTA_CLK), .CE(REG_INPUTA_CE), .RST(REG_INPUTA_RST),
                      .RESETMODE(RESETMODE))
        reg_a (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDA, a_in}), .q(a_q));
    celosia_dsp_reg #(.W(19), .CLK(REG_INPUTB_CLK), .CE(REG_INPUTB_CE), .RST(REG_INPUTB_RST),
                      .RESETMODE(RESETMODE))
        reg_b (.clk(clk), .ce(ce), .rst(rst), .d({SIGNEDB, b_in}), .q(b_q));
    celosia_dsp_reg #(.W(18), .CLK(REG_INPUTC_CLK), .CE(REG_INPUTC_CE), .RST(REG_INPUTC_RST),
                      .RESETMODE(RESETMODE))
        reg_c (.clk(clk), .ce(ce), .rst(rst), .d(c_in), .q(c_q));

    wire [35:0] a_ext = {{18{a_q[18] & a_q[17]}}, a_q[17:0]};
    wire [35:0] b_ext = {{18{b_q[18] & b_q[17]}}, b_q[17:0]};
    wire [35:0] product = a_ext * b_ext;      // the low 36 bits: exact for either signedness
    wire [36:0] p_pipe, p_out;
    celosia_dsp_reg #(.W(37), .CLK(REG_PIPELINE_CLK), .CE(REG_PIPELINE_CE),
                      .RST(REG_PIPELINE_RST), .RESETMODE(RESETMODE))
        reg_pipe (.clk(clk), .ce(ce), .rst(rst), .d({a_q[18] | b_q[18], product}), .q(p_pipe));
    celosia_dsp_reg #(.W(37), .CLK(REG_OUTPUT_CLK), .CE(REG_OUTPUT_CE), .RST(REG_OUTPUT_RST),
                      .RESETMODE(RESETMODE))
        reg_out (.clk(clk), .ce(ce), .rst(rst), .d(p_pipe), .q(p_out));

    assign {P35, P34, P33, P32, P31, P30, P29, P28, P27, P26, P25, P24, P23, P22, P21, P20, P19, P18, P17, P16, P15, P14, P13, P12, P11, P10, P9, P8, P7, P6, P5, P4, P3, P2, P1, P0} = p_out[35:0];
    assign SIGNEDP = p_out[36];
    assign {ROA17, ROA16, ROA15, ROA14, ROA13, ROA12, ROA11, ROA10, ROA9, ROA8, ROA7, ROA6, ROA5, ROA4, ROA3, ROA2, ROA1, ROA0} = a_q[17:0];
    assign {ROB17, ROB16, ROB15, ROB14, ROB13, ROB12, ROB11, ROB10, ROB9, ROB8, ROB7, ROB6, ROB5, ROB4, ROB3, ROB2, ROB1, ROB0} = b_q[17:0];
    assign {SROA17, SROA16, SROA15, SROA14, SROA13, SROA12, SROA11, SROA10, SROA9, SROA8, SROA7, SROA6, SROA5, SROA4, SROA3, SROA2, SROA1, SROA0} = a_q[17:0];
    assign {SROB17, SROB16, SROB15, SROB14, SROB13, SROB12, SROB11, SROB10, SROB9, SROB8, SROB7, SROB6, SROB5, SROB4, SROB3, SROB2, SROB1, SROB0} = b_q[17:0];
    assign {ROC17, ROC16, ROC15, ROC14, ROC13, ROC12, ROC11, ROC10, ROC9, ROC8, ROC7, ROC6, ROC5, ROC4, ROC3, ROC2, ROC1, ROC0} = c_q;
endmodule

// One optional register of the sysDSP slice: CLK "NONE" (a wire) or "CLK0".."CLK3", with the
// named clock enable and reset.
module celosia_dsp_reg #(
    parameter W = 1,
    parameter CLK = "NONE",
    parameter CE = "CE0",
    parameter RST = "RST0",
    parameter RESETMODE = "SYNC"
) (input [3:0] clk, input [3:0] ce, input [3:0] rst, input [W-1:0] d, output [W-1:0] q);
    localparam integer KC = CLK == "CLK1" ? 1 : CLK == "CLK2" ? 2 : CLK == "CLK3" ? 3 : 0;
    localparam integer KE = CE == "CE1" ? 1 : CE == "CE2" ? 2 : CE == "CE3" ? 3 : 0;
    localparam integer KR = RST == "RST1" ? 1 : RST == "RST2" ? 2 : RST == "RST3" ? 3 : 0;
    generate
        if (CLK == "NONE") begin : wire_through
            assign q = d;
        end else begin : registered
            reg [W-1:0] r = {W{1'b0}};
            wire c = clk[KC];
            wire e = ce[KE];
            wire s = rst[KR];
            if (RESETMODE == "ASYNC") begin : async_reset
                always @(posedge c or posedge s)
                    if (s) r <= {W{1'b0}};
                    else if (e) r <= d;
            end else begin : sync_reset
                always @(posedge c)
                    if (s) r <= {W{1'b0}};
                    else if (e) r <= d;
            end
            assign q = r;
        end
    endgenerate
endmodule

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
